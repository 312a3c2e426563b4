"""The diffusion math: schedules, forward processes, the sampling loop and its steps, the bound
estimator, rounding and guidance. Imports torch only (and FAISS, lazily, for rounding).

- :mod:`.schedules` — ``ᾱ(t)`` and ``α(t)`` on continuous time;
- :mod:`.base` — what a process offers, and the records it returns;
- :mod:`.gaussian`, :mod:`.gaussian_samplers` — Gaussian diffusion on embeddings and its steps;
- :mod:`.absorbing` — [MASK]-absorbing diffusion; :mod:`.autoregressive` — the AR baseline;
- :mod:`.loop` — the one sampling loop; :mod:`.noise` — its random numbers;
- :mod:`.bound` — the one NLL-bound estimator;
- :mod:`.registry` — the processes and what fits each; :mod:`.settings` — their settings;
- :mod:`.rounding` — FAISS nearest-row search; :mod:`.guidance` — conditions and guidance.
"""
