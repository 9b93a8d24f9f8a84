"""Graph autoencoders (GAE, VGAE) and their random-walk regularisation (RWR-GAE): data, models, training."""
