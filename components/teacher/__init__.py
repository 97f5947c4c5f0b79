"""Teachers: modules that follow the student (EMA) or stay frozen."""
