"""KED, Knowledge Explaining Distillation (Chowdhury, Liang, Tizghadam, Albanese 2023): the method (`method.py`)
and what its runs need beyond a teacher (`needs.py`): the input superfeatures of the ordinary teacher, made once
per teacher and kept in the store, and the chimeric phase over samples assembled from them."""

from oracle_kd.methods.ked import needs
from oracle_kd.methods.ked.method import KED, KEDConfig

__all__ = ["KED", "KEDConfig", "needs"]
