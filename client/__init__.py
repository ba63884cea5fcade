"""The Flower ClientApp of aimfl (local adapter fine-tuning on a site's videos)."""
