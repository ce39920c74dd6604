"""Inference on whole photos: find the faces (see ``faces``) that the emotion models then classify."""
