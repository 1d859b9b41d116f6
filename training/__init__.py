"""Training, evaluation and export for the conversational QA model (torch lives here, not in cqa)."""
