"""What the Flower server and client apps share, as Flower's `task.py` does: the run settings and the aimfl config
they train (`settings`), the update codecs of the trainable state and the server's check of a reply (`codec`), and a
client's data and local training round (`local`)."""
