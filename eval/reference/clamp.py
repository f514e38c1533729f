def clamp(value, low, high):
    if low > high:
        raise ValueError("low is greater than high")
    if value < low:
        return low
    if value > high:
        return high
    return value
