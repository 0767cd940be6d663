"""Floor 4: embeddings, losses, the classifier, CRATE-MAE, the language models and sampling."""
