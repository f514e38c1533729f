from datetime import date, timedelta


def add_business_days(date_text, n):
    if n < 0:
        raise ValueError("n must not be negative")
    day = date.fromisoformat(date_text)
    while n > 0:
        day += timedelta(days=1)
        if day.weekday() < 5:
            n -= 1
    return day.isoformat()
