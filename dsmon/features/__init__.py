"""The features layer: the one place each signal is derived from samples.

Rules, diagnose, the agent's exposition and the reports read the values computed here.
"""

from dsmon.features.catalogue import (CONTEXT_FIELDS, FEATURES, FS_WAIT_CHANNELS, Feature,
                                      FeatureExtractor, FeatureStore)

__all__ = ["CONTEXT_FIELDS", "FEATURES", "FS_WAIT_CHANNELS", "Feature", "FeatureExtractor",
           "FeatureStore"]
