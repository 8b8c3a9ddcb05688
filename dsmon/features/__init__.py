"""The features layer: the one place each signal is derived from samples.

Rules, diagnose, the agent's exposition and the reports read the values computed here:
`catalogue` names them, `extractor` computes them per tick (one module per role), `store`
keeps them for the rules' windows; `series` (rates, fits), `threads` (per-thread CPU) and
`placement` (usable CPUs, thread settings) are the derivations everything shares.
"""

from dsmon.features.catalogue import CONTEXT_FIELDS, FEATURES, Feature
from dsmon.features.extractor import FeatureExtractor
from dsmon.features.io import FS_WAIT_CHANNELS
from dsmon.features.store import FeatureStore

__all__ = ["CONTEXT_FIELDS", "FEATURES", "FS_WAIT_CHANNELS", "Feature", "FeatureExtractor",
           "FeatureStore"]
