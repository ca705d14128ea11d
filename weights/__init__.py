"""Obtaining and converting pretrained VGG weights (installed as ``nstjax.weights``)."""
