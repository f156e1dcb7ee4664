"""Datasets: the study index, patient-level splits, tasks, the preprocessed cache, cohorts, augmentation, phantoms."""
