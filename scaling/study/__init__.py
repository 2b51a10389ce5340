"""A study from its file to its results: what it will compute (``plan``), the checks before
anything runs (``preflight``), the results store (``store``), the state of its cells
(``status``), the grid on Ray Tune (``grid``, the only module that imports ray), and the
verbs ``plan``/``run``/``status`` (``verbs``) and ``trial`` (``trial_verb``)."""
