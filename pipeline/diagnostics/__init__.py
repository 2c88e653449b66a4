"""Why models fail, per question, per pair, per pattern and per model (README "Diagnostics").

* `records`: the records and the tables they ship as (one release configuration each).
* `shuffle`: tiles of an image permuted (any VLM), visual tokens permuted after the projector
  (local transformers VLMs). `trials`: every condition asked, summed up per question and model
  (accuracy with and without images, blank images, shuffles; gain, leakage, bias-aligned errors).
* `features`: pooled and patch features of an encoder (open_clip, DINOv2, a VLM's own vision tower).
  `separation`: can the encoder tell a pair apart (pooled and patch similarity, statement test,
  leave-one-pair-out probe).
* `text_bias`: how well text alone predicts a question's answer (k folds grouped by pair).
* `logistic`: the L2-penalised logistic regression of the probe and of `text_bias` (dual Newton).
* `run`: everything above on a list of pairs; `report`: the markdown and the SVG charts.
"""
