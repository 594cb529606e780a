"""The data layer: GenImage layout, manifests, splits, the sample dataset, preprocessing and Ray Data."""
