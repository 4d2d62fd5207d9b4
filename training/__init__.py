"""Training module: regenerates the view classifier the node runs (models/).

Needs the `training` extra (TensorFlow). Imports only `dicomnode.preprocess` from the node (and
`dicomnode.classify` to check shipped files), so serving and training share one preprocessing path.
"""
