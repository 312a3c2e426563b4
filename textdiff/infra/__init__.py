"""The infrastructure: experiment configs (:mod:`.config`), data loading (:mod:`.data`) and
batching (:mod:`.batching`), the accelerate trainer (:mod:`.trainer`, :mod:`.optimization`),
run folders and checkpoints (:mod:`.checkpoint`), evaluation (:mod:`.evaluation`,
:mod:`.metrics`, :mod:`.e2e`) and the command line (:mod:`.cli`)."""
