"""TF1-shaped fronts over jaxmeta's native API: `import jaxmeta.compat.v1 as tf`."""
