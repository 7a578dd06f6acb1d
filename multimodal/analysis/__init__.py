"""Questions asked of a trained model: robustness (missing modalities, corruptions,
attacks), explanations, drift and ensembles."""
