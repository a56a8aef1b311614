"""Data layer: dataset loaders, face preprocessing, optical flow, leave-one-subject-out folds."""
