"""Classification metrics, shared by training and evaluation."""
