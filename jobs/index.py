"""index: a knowledge base from documents (an upload's folder, the bundled demo) or a dataset's text column:
read, split into passages, indexed with BM25, or embedded by a registry sentence-transformers model (by default beside
BM25, the two fused: hybrid; backend/pipeline/rag.py) in the job's artifacts/index, and registered
as ``kb/<name>`` owned by the job's owner. Documents that can't be read are reported and left out."""
from __future__ import annotations

import time

from backend.pipeline import rag
from backend.workspace import datasets
from backend.core.errors import BAD_INPUT, UserError
from backend.core.paths import human_size
from backend.kinds.index import Spec
from jobs.common import Job, JobError, run


def main(spec: Spec, job: Job) -> dict:
    t0 = time.monotonic()
    job.progress(0, 3, "steps", "reading documents", force=True)
    try:
        if spec.folder:
            units, problems = rag.read_folder(rag.source_folder(spec.folder, job.home))
            source = spec.folder
        else:
            path = datasets.resolve(spec.dataset, job.home)
            units, problems = rag.dataset_units(path, spec.text_field, spec.dataset), []
            source = f"dataset {spec.dataset}"
    except UserError as e:
        raise JobError(str(e), BAD_INPUT,
                       "upload documents (txt, md, pdf, docx, html or a zip of them), or name the dataset's text field") from None
    for problem in problems:
        job.message(f"left out: {problem}", level="warning")
    if not units:
        raise JobError("no readable document with text", BAD_INPUT, "upload documents with text and retry")
    job.progress(1, 3, "steps", f"splitting {len(units)} documents or pages", force=True)
    nodes = rag.split(units, spec.chunk_size, spec.chunk_overlap)
    folder = job.dir / "artifacts" / "index"
    folder.mkdir(parents=True, exist_ok=True)
    if spec.embedding_model:
        try:
            embedder = rag.embedder(spec.embedding_model, job.home)
        except UserError as e:
            raise JobError(str(e), BAD_INPUT, "pick a sentence-transformers model, or none for BM25") from None
        job.progress(2, 3, "steps", f"embedding {len(nodes)} passages ({spec.embedding_model})", force=True)
        rag.build_dense(nodes, folder, spec.embedding_model, embedder)
        if spec.hybrid:         # the words a question shares with a passage, beside what it means
            rag.build(nodes, folder / rag.HYBRID_BM25, top_k=3)
    else:
        job.progress(2, 3, "steps", f"indexing {len(nodes)} passages (BM25)", force=True)
        rag.build(nodes, folder, top_k=3)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    retrieval = ("hybrid" if spec.hybrid else "dense") if spec.embedding_model else "bm25"
    files = sorted({u["source"] for u in units})
    meta = {"source": source, "documents": len(files), "files": files[:200], "chunks": len(nodes),
            "size_bytes": size, "chunk_size": spec.chunk_size, "chunk_overlap": spec.chunk_overlap,
            "retrieval": retrieval, "left_out": [str(p) for p in problems][:50],
            **({"embedding_model": spec.embedding_model} if spec.embedding_model else {})}
    job.register("kb", spec.name, folder, meta)
    job.progress(3, 3, "steps", "done", force=True)
    job.message(f"knowledge base {spec.name!r}: {len(files)} documents, {len(nodes)} passages, "
                f"{human_size(size)} index, in {time.monotonic() - t0:.1f} s")
    return {"kb": spec.name, **meta}


if __name__ == "__main__":
    run(main, Spec)
