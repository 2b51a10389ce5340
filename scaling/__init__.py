"""The scaling stage: SimMIM cells on timm encoders, scheduled as model × data × length grids.

One room per stage of the flow; imports point down this list only (a test checks it)::

    errors    UserError, the base of every user-facing error (exit 2)
    config/   study dataclasses, TOML + --set loading with located errors, rules, identity
    data/     manifests + bad-image accounting, decode, sampler, masking, batches
    model/    the torch-free size/family registry, timm builds, SimMIM, FLOPs
    train/    the loop, optimizers, lr schedules, checkpoint bytes (no studies, no cells)
    cell/     one cell in any process: context, the phase runner, pre-training, fine-tuning
    study/    plan, preflight, status, the results store, the grid (the only ray import), verbs
    cli       ``mimscale <verb>``

``config`` validates against three torch-free leaves below it — ``model.sizes``,
``data.masking`` (mask geometry) and ``train.schedule`` — so loading a study,
``plan`` (FLOP cache warm) and ``status`` import neither torch nor timm.
"""
