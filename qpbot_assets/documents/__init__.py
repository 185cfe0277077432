"""Documents: reading files into text, cleaning it, chunking it and describing it."""
