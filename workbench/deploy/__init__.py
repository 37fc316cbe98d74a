"""Deploy: space.yaml and life on a Space, the Space deploy, Hub export, and the access policy."""
