class Inventory:
    def __init__(self):
        self._stock = {}

    @staticmethod
    def _check(quantity):
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity <= 0:
            raise ValueError("quantity must be a positive integer")

    def add(self, name, quantity):
        self._check(quantity)
        self._stock[name] = self._stock.get(name, 0) + quantity

    def remove(self, name, quantity):
        self._check(quantity)
        if self._stock.get(name, 0) < quantity:
            raise ValueError(f"not enough {name}")
        self._stock[name] -= quantity

    def count(self, name):
        return self._stock.get(name, 0)

    def items(self):
        return sorted((n, q) for n, q in self._stock.items() if q > 0)
