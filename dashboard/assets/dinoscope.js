// Keeps a page's parameters in the address bar without reloading the page, so a link reproduces the view.
window.dash_clientside = Object.assign({}, window.dash_clientside, {
    dinoscope: {
        galleryQuery: function (dataset, label, page, perPage, id) {
            const query = new URLSearchParams();
            if (dataset) query.set("dataset", dataset);
            if (label) query.set("label", label);
            if (page && page > 1) query.set("page", page);
            if (perPage && perPage !== "50") query.set("per_page", perPage);
            window.history.replaceState(null, "", window.location.pathname + "?" + query.toString());
            return id;
        }
    }
});
