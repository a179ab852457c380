"""Learning from the team: kept annotations, decoder fine-tuning, versions per project."""
