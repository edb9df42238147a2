"""The multi-task model (`model.py`), its config (`config.py`) and task heads (`heads.py`).

Registration with `AutoConfig` / `AutoModel` happens in `manyheads/__init__.py`, so that importing a head
from here does not pull in the model (task modules import heads; the model imports task modules).
"""
