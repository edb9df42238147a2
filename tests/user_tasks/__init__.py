"""Task types defined outside the manyheads package, as a user's own code would (see test_user_task_type.py)."""
