"""Training, evaluation and streaming tasks (``mmeff.tasks``)."""
