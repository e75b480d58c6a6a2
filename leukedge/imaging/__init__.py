"""The image floor: reading odd image files and THE preprocessing function.

Everything that turns pixels into a model input stands here, below the dataset
layer, the training code and the microscope runtime alike, so train, export
parity and the deployed runtime cannot drift apart.
"""
