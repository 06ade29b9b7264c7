"""intrada: a versioned DVC pipeline for two-step unsupervised domain adaptation.

Inter-domain adaptation (AdvEnt), entropy ranking into easy/hard splits, pseudo-labels
and intra-domain adaptation (IntraDA), evaluated on the target validation set.
"""

__version__ = "0.1.0"
