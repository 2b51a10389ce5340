"""Training machinery that knows nothing of studies or cells: the loop (``loop``),
optimizers (``optim``), lr schedules (``schedule``, torch-free) and checkpoint bytes
(``checkpoint``)."""
