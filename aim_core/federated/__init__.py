"""What the Flower server and client apps share, as Flower's `task.py` does: the run settings and the aimfl config
they train (`settings`), the wire format of trainable states and the server's check of a reply (`wire`), and a
client's data and local training round (`local`)."""
