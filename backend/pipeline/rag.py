"""Knowledge bases (RAG): documents read into text with their place, split into passages, indexed with BM25
(LlamaIndex's SentenceSplitter and BM25Retriever over bm25s; Chinese words cut by jieba first) or, when a
sentence-transformers model from the registry is named, embedded (LlamaIndex's VectorStoreIndex), by default with
BM25 beside it, the two lists fused by reciprocal rank (LlamaIndex's QueryFusionRetriever: hybrid retrieval), and
the passages a question retrieves (re-ordered by a cross-encoder when the serve job names one) put into its prompt.

A knowledge base is a registry entry (type ``kb``) made by an ``index`` job: its path is the index folder in
the job's artifacts, its meta the documents, chunk settings and counts. Uploads land in
``<home>/documents/<owner>/<n>/`` (zips extracted there, nothing allowed out); a file that can't be read is
a ``RagError`` in the list of problems, and the rest of the upload is kept. ``rag_serve`` jobs serve a base
with a model endpoint as an OpenAI-compatible endpoint (jobs/rag_serve.py). Heavy imports are lazy.
"""
from __future__ import annotations

import html.parser
import io
import json
import math
import re
import stat
import zipfile
from pathlib import Path

from backend.access import users
from backend.core import defaults, paths
from backend.core.errors import UserError
from backend.core.store import open_store

EMBEDDING_FILE = "embedding.json"                   # in a dense index: the sentence-transformers model it used
HYBRID_BM25 = "bm25"                                # in a hybrid index: the BM25 index beside the vectors
RERANK_POOL = 4                                     # a reranker reads 4 × top_k candidates
SUFFIXES = (".txt", ".md", ".pdf", ".docx", ".html", ".htm")
DEMO_DIR = defaults.ROOT / "assets" / "rag"          # the bundled CPU demo documents (folder name "demo")
DEMO = "demo"
ZIP_MAX_FILES = 2000
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
TOKEN_PATTERN = r"(?u)\b\w+\b"                       # single characters too: a cut Chinese word may be one
SENTENCE_END = re.compile(r"(?<=[.!?])(?=\s)|(?<=[。！？；])")   # after . ! ? and a space, or after 。！？；
PROMPT = {"en": "Answer the question using only the context below.\n\nContext:\n{context}\n\nQuestion: {question}",
          "zh": "请只根据下面的资料回答问题。\n\n资料：\n{context}\n\n问题：{question}"}


class RagError(UserError):
    """A document, upload or knowledge base that can't be used (a message key and fields)."""


class RagRefused(RagError, users.Refused):
    """Another student's private knowledge base; recorded in the audit log."""


# -- uploads ------------------------------------------------------------------------------------------
def docs_dir(home: Path) -> Path:
    return home / "documents"


def new_folder(owner: str, home: Path) -> Path:
    """A fresh folder for one upload: ``documents/<owner>/<n>``."""
    root = paths.inside(docs_dir(home), owner or "_shared")
    root.mkdir(parents=True, exist_ok=True)
    n = 1 + max((int(p.name) for p in root.iterdir() if p.name.isdigit()), default=0)
    while True:
        try:
            (root / str(n)).mkdir()
            return root / str(n)
        except FileExistsError:
            n += 1


def save_upload(files: list[tuple[str, bytes]], owner: str, home: Path) -> tuple[Path, list[RagError]]:
    """Save uploaded documents (and zips of them, extracted) into a new folder: (the folder, the problems).
    A file over UPLOAD_MAX_MB, of another type, or a zip entry that climbs out is left out with its reason; an
    upload past the owner's disk quota is refused whole (RagRefused, audited)."""
    users.check_disk(owner, sum(len(data) for _, data in files), RagRefused, home)
    folder, problems = new_folder(owner, home), []
    limit = defaults.setting("UPLOAD_MAX_MB") * 2**20
    for name, data in files:
        name = Path(name).name
        if len(data) > limit:
            problems.append(RagError("err.rag.too_big", name=name, mb=round(len(data) / 2**20), limit=limit // 2**20))
        elif name.lower().endswith(".zip"):
            problems += extract_zip(name, data, folder, limit)
        elif name.lower().endswith(SUFFIXES):
            paths.atomic_write(paths.inside(folder, name), data)
        else:
            problems.append(RagError("err.rag.file_type", name=name, exts=", ".join(SUFFIXES + (".zip",))))
    return folder, problems


def extract_zip(name: str, data: bytes, folder: Path, limit: int) -> list[RagError]:
    """Extract a zip's documents into ``folder``: entries that climb out (``..``, absolute, links), of other
    types or past ``limit`` bytes (in all) are left out, each with its reason."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        return [RagError("err.rag.bad_zip", name=name)]
    problems, total = [], 0
    for info in archive.infolist()[:ZIP_MAX_FILES]:
        where = f"{name}: {info.filename}"
        if info.is_dir():
            continue
        try:
            if stat.S_ISLNK(info.external_attr >> 16) or info.filename.startswith(("/", "\\")):
                raise paths.OutsideError("err.path.outside", path=info.filename, roots=str(folder))
            target = paths.inside(folder, info.filename.replace("\\", "/"))
        except paths.OutsideError:
            problems.append(RagError("err.rag.zip_outside", name=where))
            continue
        if not target.name.lower().endswith(SUFFIXES):
            problems.append(RagError("err.rag.file_type", name=where, exts=", ".join(SUFFIXES)))
            continue
        total += info.file_size
        if total > limit:
            problems.append(RagError("err.rag.too_big", name=where, mb=round(total / 2**20), limit=limit // 2**20))
            break
        with archive.open(info) as src:
            paths.atomic_write(target, src.read(limit + 1)[:limit])
    if len(archive.infolist()) > ZIP_MAX_FILES:
        problems.append(RagError("err.rag.zip_many", name=name, n=ZIP_MAX_FILES))
    return problems


# -- reading documents --------------------------------------------------------------------------------
def decode(data: bytes, name: str) -> str:
    """Text from bytes: UTF-8 (a BOM allowed), UTF-16 with its BOM, or GB18030 (Chinese files saved by Windows)."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16")
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if "\0" not in text:
            return text
    raise RagError("err.rag.encoding", name=name)


class _Text(html.parser.HTMLParser):
    SKIP = {"script", "style", "head"}
    BLOCK = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "section", "article"}

    def __init__(self):
        super().__init__()
        self.parts, self.skipping = [], 0

    def handle_starttag(self, tag, attrs):
        self.skipping += tag in self.SKIP
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        self.skipping -= tag in self.SKIP and self.skipping > 0

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def html_text(text: str) -> str:
    parser = _Text()
    parser.feed(text)
    return re.sub(r"\n\s*\n+", "\n\n", "".join(parser.parts)).strip()


def read_file(path: Path, name: str) -> list[dict]:
    """One document's text as units ``{"source", "page", "text"}`` (a pdf: one per page); RagError when
    it can't be read or holds no text."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        units = pdf_pages(path, name)
    elif suffix == ".docx":
        try:
            import docx
            text = "\n".join(p.text for p in docx.Document(str(path)).paragraphs)
        except Exception:  # noqa: BLE001 - python-docx raises many kinds (zip, xml, key errors) on a bad file
            raise RagError("err.rag.unreadable", name=name) from None
        units = [{"source": name, "page": None, "text": text}]
    else:
        text = decode(path.read_bytes(), name)
        units = [{"source": name, "page": None, "text": html_text(text) if suffix in (".html", ".htm") else text}]
    units = [u for u in units if u["text"].strip()]
    if not units:
        raise RagError("err.rag.empty", name=name)
    return units


def pdf_pages(path: Path, name: str) -> list[dict]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError
    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise RagError("err.rag.pdf_encrypted", name=name)
        return [{"source": name, "page": i + 1, "text": page.extract_text() or ""}
                for i, page in enumerate(reader.pages)]
    except RagError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, OSError, NotImplementedError):
        raise RagError("err.rag.unreadable", name=name) from None


def read_folder(folder: Path) -> tuple[list[dict], list[RagError]]:
    """Every document under ``folder`` as units (sorted by path), and the problems of those left out."""
    units, problems = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        if not path.name.lower().endswith(SUFFIXES):
            continue
        try:
            units += read_file(path, path.relative_to(folder).as_posix())
        except RagError as e:
            problems.append(e)
    return units, problems


def dataset_units(path: Path, field: str, name: str) -> list[dict]:
    """A dataset's text column as units (the row number is the place)."""
    from backend.workspace.rows import scan
    units = []
    for i, rec, _ in scan(path):
        value = rec.get(field) if isinstance(rec, dict) else None
        if isinstance(value, str) and value.strip():
            units.append({"source": name, "page": None, "row": i, "text": value})
    if not units:
        raise RagError("err.rag.no_column", name=name, field=field)
    return units


# -- splitting and indexing ---------------------------------------------------------------------------
def segment(text: str) -> str:
    """Chinese runs cut into words by jieba (space-separated), the rest as it is: bm25s then tokenizes both."""
    if not CJK.search(text):
        return text
    import jieba
    jieba.setLogLevel(60)
    return CJK.sub(lambda m: " " + " ".join(jieba.cut(m.group(0))) + " ", text)


def sentences(text: str) -> list[str]:
    """Sentences for the splitter, the text kept whole (whitespace included): ends of English and Chinese
    sentences alike, where the default (NLTK's English punkt) misses 。 and took most of an index's time."""
    return [s for s in SENTENCE_END.split(text) if s]


def split(units: list[dict], chunk_size: int, chunk_overlap: int) -> list:
    """LlamaIndex nodes (passages) of every unit, each with its source, page or row, and first line."""
    from llama_index.core import Document
    from llama_index.core.node_parser import SentenceSplitter
    keys = ["source", "page", "row", "line"]
    docs = [Document(text=u["text"], metadata={k: u[k] for k in ("source", "page", "row") if u.get(k)},
                     excluded_embed_metadata_keys=keys, excluded_llm_metadata_keys=keys) for u in units]
    nodes = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap, chunking_tokenizer_fn=sentences
                             ).get_nodes_from_documents(docs)
    texts = {d.doc_id: d.text for d in docs}
    for node in nodes:
        start = node.start_char_idx
        if start is not None and start >= 0 and "row" not in node.metadata:
            node.metadata["line"] = texts[node.ref_doc_id].count("\n", 0, start) + 1
    return nodes


def retriever_class():
    """LlamaIndex's BM25Retriever with queries cut by jieba like the passages were."""
    from llama_index.core.schema import QueryBundle
    from llama_index.retrievers.bm25 import BM25Retriever

    class Retriever(BM25Retriever):
        def __init__(self, *args, token_pattern: str = TOKEN_PATTERN, **kwargs):
            super().__init__(*args, token_pattern=token_pattern, **kwargs)

        def _retrieve(self, query_bundle):     # a passage that shares no word with the question is no hit
            return [n for n in super()._retrieve(QueryBundle(segment(query_bundle.query_str))) if (n.score or 0) > 0]
    return Retriever


def is_embedder(path: str | Path) -> bool:
    """A sentence-transformers model folder (its ``modules.json``), e.g. paraphrase-multilingual-MiniLM or a bge model."""
    return Path(path, "modules.json").is_file()


def _usable(home: Path, by: users.Actor, is_one) -> list:
    return [e for e in open_store(home).items("model") if users.may_use(e, by, home=home) and is_one(e.path)]


def _folder(name: str, home: Path, is_one, key: str) -> Path:
    entry = open_store(home).get("model", name)
    if entry is None or not is_one(entry.path):
        raise RagError(key, name=name)
    return Path(entry.path)


def embedders(home: Path, by: users.Actor) -> list:
    """Registry models ``by`` may use that are sentence-transformers models (dense retrieval)."""
    return _usable(home, by, is_embedder)


def embedder(name: str, home: Path) -> Path:
    """The folder of the registry model ``name``, a sentence-transformers model; RagError when it is none."""
    return _folder(name, home, is_embedder, "err.rag.not_embedder")


def embed_model(path: str | Path):
    """LlamaIndex's HuggingFaceEmbedding (sentence-transformers) on a local folder, on the CPU, offline."""
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    return HuggingFaceEmbedding(model_name=str(path), device="cpu", show_progress_bar=False)


def build_dense(nodes: list, folder: Path, name: str, path: Path) -> None:
    """A vector index of ``nodes`` embedded by the sentence-transformers model at ``path`` (LlamaIndex's
    VectorStoreIndex, persisted in ``folder`` with ``embedding.json`` naming the model)."""
    from llama_index.core import VectorStoreIndex
    if not nodes:
        raise RagError("err.rag.no_text")
    index = VectorStoreIndex(nodes, embed_model=embed_model(path), show_progress=False)
    index.storage_context.persist(persist_dir=str(folder))
    (folder / EMBEDDING_FILE).write_text(json.dumps({"model": name, "path": str(path)}), encoding="utf-8")


def build(nodes: list, folder: Path, top_k: int) -> None:
    """A BM25 index of ``nodes`` persisted in ``folder`` (LlamaIndex's format: bm25s files + retriever.json)."""
    import bm25s
    import Stemmer
    from llama_index.core.vector_stores.utils import node_to_metadata_dict
    if not nodes:
        raise RagError("err.rag.no_text")
    stemmer = Stemmer.Stemmer("english")
    from bm25s.stopwords import STOPWORDS_CHINESE, STOPWORDS_EN
    tokens = bm25s.tokenize([segment(n.get_content()) for n in nodes],
                            stopwords=list(STOPWORDS_EN) + list(STOPWORDS_CHINESE), stemmer=stemmer,
                            token_pattern=TOKEN_PATTERN, show_progress=False)
    bm25 = bm25s.BM25()
    bm25.index(tokens, show_progress=False)
    bm25.corpus = [node_to_metadata_dict(n) | {"node_id": n.node_id} for n in nodes]
    retriever = retriever_class()(existing_bm25=bm25, stemmer=stemmer, similarity_top_k=top_k)
    retriever.persist(str(folder), show_progress=False)


def is_reranker(path: str | Path) -> bool:
    """A cross-encoder folder (a sequence classifier with one output: a question and a passage in, a relevance
    out), e.g. bge-reranker-base or ms-marco-MiniLM-L6-v2."""
    try:
        config = json.loads(Path(path, "config.json").read_bytes()[:1 << 20])
    except (OSError, ValueError):
        return False
    return (isinstance(config, dict) and any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or [])
            and len(config.get("id2label") or {"0": ""}) == 1)


def rerankers(home: Path, by: users.Actor) -> list:
    """Registry models ``by`` may use that are cross-encoders (reranking)."""
    return _usable(home, by, is_reranker)


def reranker(name: str, home: Path) -> Path:
    """The folder of the registry model ``name``, a cross-encoder; RagError when it is none."""
    return _folder(name, home, is_reranker, "err.rag.not_reranker")


class Reranked:
    """A retriever's ``RERANK_POOL`` × top_k candidates scored again by a cross-encoder that reads the question and
    each passage together (LlamaIndex's SentenceTransformerRerank, on the CPU, never the model's own code), the
    best ``top_k`` kept."""

    def __init__(self, retriever, path: Path, top_k: int):
        from llama_index.core.postprocessor import SentenceTransformerRerank
        self.retriever = retriever
        self.rerank = SentenceTransformerRerank(top_n=top_k, model=str(path), device="cpu", trust_remote_code=False)

    def retrieve(self, question: str) -> list:
        return self.rerank.postprocess_nodes(self.retriever.retrieve(question), query_str=question)


def load(folder: str | Path, top_k: int = 3, rerank: Path | None = None):
    """The persisted retriever answering ``top_k`` passages (at most as many as it holds); with ``rerank`` (a
    cross-encoder folder), its candidates re-ordered by that model."""
    if rerank is not None:
        return Reranked(load(folder, top_k * RERANK_POOL), rerank, top_k)
    folder = Path(folder)
    if (folder / EMBEDDING_FILE).is_file():
        from llama_index.core import StorageContext, load_index_from_storage
        info = json.loads((folder / EMBEDDING_FILE).read_text(encoding="utf-8"))
        if not is_embedder(info["path"]):
            raise RagError("err.rag.embedder_gone", name=info["model"])
        index = load_index_from_storage(StorageContext.from_defaults(persist_dir=str(folder)),
                                        embed_model=embed_model(info["path"]))
        dense = index.as_retriever(similarity_top_k=top_k)
        if not (folder / HYBRID_BM25).is_dir():
            return dense
        from llama_index.core.llms import MockLLM
        from llama_index.core.retrievers import QueryFusionRetriever
        # hybrid: each retriever's top_k, merged by reciprocal rank (RRF); one query, no LLM rewriting it
        return QueryFusionRetriever([dense, load(folder / HYBRID_BM25, top_k)], llm=MockLLM(), num_queries=1,
                                    mode="reciprocal_rerank", similarity_top_k=top_k, use_async=False)
    retriever = retriever_class().from_persist_dir(str(folder), show_progress=False)
    retriever.similarity_top_k = min(top_k, int(retriever.bm25.scores["num_docs"]))
    return retriever


def retrieve(retriever, question: str) -> list[dict]:
    """The passages for a question, best first: ``{"source", "page"|"row"|"line", "text", "score"}``."""
    return [{**{k: v for k, v in hit.node.metadata.items() if k in ("source", "page", "row", "line")},
             "text": hit.node.get_content(), "score": round(float(hit.score), 3)}
            for hit in retriever.retrieve(question) if kept(float(hit.score))]


def kept(score: float) -> bool:
    """A dense passage has a similarity (not NaN: an embedding of nothing); BM25 drops its own zero scores."""
    return not math.isnan(score)


# -- prompts ------------------------------------------------------------------------------------------
def place(passage: dict) -> str:
    """Where a passage comes from: ``notes.md · line 12``, ``guide.pdf · p. 3``, ``qa.jsonl · row 7``."""
    for key, label in (("page", "p. "), ("row", "row "), ("line", "line ")):
        if passage.get(key):
            return f"{passage.get('source', '')} · {label}{passage[key]}"
    return str(passage.get("source", ""))


def augment(messages: list[dict], passages: list[dict]) -> list[dict]:
    """The conversation with its last user message asked over the passages (in its own language)."""
    if not passages or not messages:
        return messages
    question = messages[-1]["content"]
    context = "\n\n".join(f"[{i}] {p['text'].strip()}" for i, p in enumerate(passages, 1))
    template = PROMPT["zh" if CJK.search(question) else "en"]
    return messages[:-1] + [{**messages[-1], "content": template.format(context=context, question=question)}]


# -- the registry -------------------------------------------------------------------------------------
def list_kbs(home: Path, by: users.Actor) -> list:
    """Knowledge bases ``by`` may use (their own, the instructors', shared ones), newest first."""
    return [e for e in open_store(home).items("kb") if users.may_use(e, by, home=home)]


def check_kb(name: str, by: users.Actor, home: Path, error: type[users.Refused] = RagRefused):
    """The kb entry ``by`` may use; RagError when there is none, ``error`` (audited) for another student's."""
    entry = open_store(home).get("kb", name)
    if entry is None:
        raise RagError("err.rag.no_kb", name=name)
    if not users.may_use(entry, by, home=home):
        users.refuse(by, "use", f"kb {name}", error("err.users.kb_not_yours", name=name), home=home)
    return entry


def source_folder(folder: str, home: Path) -> Path:
    """An index job's documents folder: the bundled demo (``demo``) or an upload under ``documents/``."""
    if folder == DEMO:
        return DEMO_DIR
    try:
        real = paths.inside(docs_dir(home), folder, must_exist=True)
    except paths.OutsideError:
        raise RagError("err.rag.no_folder", folder=folder) from None
    if not real.is_dir():
        raise RagError("err.rag.no_folder", folder=folder)
    return real
