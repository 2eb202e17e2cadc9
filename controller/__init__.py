"""Switchyard's release controller: blue/green releases of model versions behind one stable address."""
