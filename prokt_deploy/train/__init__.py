"""Training: the models a run builds, the training loop (``engine``) with the methods' losses (``losses``: ProKT,
KD, scratch), augmentation, several processes (``distributed``), and ``distill`` / ``train_teacher``, which write a
run directory. The student a run trains is planned by :mod:`prokt_deploy.planner`."""
