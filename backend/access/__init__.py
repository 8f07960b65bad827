"""Who may do what: accounts and sessions, the one use rule and ownership of every row, API keys and the login routes."""
