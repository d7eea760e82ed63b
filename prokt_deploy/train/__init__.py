"""Training: the planner that picks the student for a budget, the models a run builds, the training loop
(``engine``) with the methods' losses (``losses``: ProKT, KD, scratch), augmentation, several processes
(``distributed``), and ``distill`` / ``train_teacher``, which write a run directory."""
