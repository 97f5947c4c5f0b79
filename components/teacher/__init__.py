"""Teachers: modules that follow the student (EMA copies)."""
