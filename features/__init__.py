"""Data in: the contract, the generator, feature engineering, the Feast repo, training set, validation."""
