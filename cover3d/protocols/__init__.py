"""Protocols a user runs on their own data to ask "does pretraining help here?".

Each is a ``python -m`` entry point (``--help`` explains every option); they reuse the finished runs found in their
``--output`` folder, so an interrupted protocol resumes where it stopped:

- ``python -m cover3d.protocols.label_efficiency``: test Dice of ``cover_seg`` fine-tuned from scratch, from
  pretrained weights and as a frozen probe, for several numbers of labelled volumes and seeds, paired by subset;
- ``python -m cover3d.protocols.feature_probe``: a linear head on a frozen backbone's voxel features (minutes, no
  fine-tuning);
- ``python -m cover3d.protocols.pretext_comparison``: every pretext pretrained on the same data and budget, then
  field accuracy, feature health, the probe and the fine-tune side by side.

The submodules are not imported here, so that ``python -m`` runs each one once.
"""
