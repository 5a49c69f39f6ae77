"""The accelerate trainer behind :func:`inat_zoo.train.train`, split by concern.

- :mod:`.build`: pure factories of one run's pieces (model, data config, loaders, optimizer, scheduler, EMA, the
  head feature cache switch) and :func:`.build.build_run`, which assembles them in a fixed order;
- :mod:`.preflight`: the checks of a recipe against its model, on the meta device, before anything is written;
- :mod:`.checkpoint`: :class:`.checkpoint.TrainerState` and the atomic checkpoint / best-model writers;
- :mod:`.early_stopping`: the rule that picks the best epoch and stops training early (pure);
- :mod:`.losses`: the criterion (label smoothing, class weights, soft targets) and the seeded timm Mixup;
- :mod:`.loop`: :class:`.loop.Trainer`, the loop (fit, epochs, evaluation, unfreezing, resume, finish);
- :mod:`.weights`: ``model.pretrained: PATH`` (local weights; the head kept or replaced by the file's own shape);
- :mod:`.distill`: ``train.distill``, the frozen teacher and the distillation loss hook of the loop;
- :mod:`.tracking`: ``track.backend``, the trackers through accelerate, their stores inside the run directory;
- :mod:`.accelerate_compat`: the private accelerate APIs the trainer cannot avoid, in one place.
"""
