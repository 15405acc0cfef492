"""VFIO providers: where the host side of a scenario's vfio-pci devices comes from."""
