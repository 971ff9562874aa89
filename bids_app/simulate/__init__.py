"""The simulator: NATVIEW-shaped recordings with planted ground truth.

``dataset`` writes a whole release or BIDS dataset; ``scenario`` holds the planted truth;
``neural``, ``artifacts``, ``bold`` and ``stimulus`` generate each signal; ``timeline``,
``writers`` and ``truth`` lay out runs, write files and save the truth beside the data.
"""
