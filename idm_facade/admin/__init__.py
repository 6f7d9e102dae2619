"""The browser console for administrators and the data-protection officer (``/admin``)."""
