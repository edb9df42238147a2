"""The multi-task model (`model.py`) and its config (`config.py`); task heads live with the tasks
(`manyheads/tasks/heads.py`), since a task type owns its head.

Registration with `AutoConfig` / `AutoModel` happens in `manyheads/__init__.py`.
"""
