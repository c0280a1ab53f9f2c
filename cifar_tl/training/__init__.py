"""training: the recipes and profiles, and what carries them out: the schedule, the loop, evaluation, the
scikit-learn probe, self-training and consistency training (FixMatch)."""
