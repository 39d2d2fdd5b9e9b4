#!/usr/bin/env python
"""oracle-kd entry point (Hydra). Examples:

    python run.py dataset=cifar100 teacher=resnet56 student=resnet20 method=oracle method.gamma=0.5
    python run.py -m method=ce,kd,oracle train=quick      # a multirun over methods
    python run.py task=tables                             # aggregate run records into tables
"""

import sys

from oracle_kd.cli import main

if __name__ == "__main__":
    sys.exit(main())
