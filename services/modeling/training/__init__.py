"""Training the nodule segmentation network: phantom cases cached on the model grid
(``dataset``), the 3D U-Net (``network``), the recipe (``recipe``), the training loop
(``fit``, warm start from a shipped model in ``warmstart``), threshold choice on validation
phantoms (``validate``), export to ONNX and ``model.json`` (``export``), and the
``noduleflow train`` driver tying them together (``train``)."""
