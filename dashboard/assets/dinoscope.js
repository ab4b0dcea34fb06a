// Keeps a page's parameters in the address bar without reloading the page, so a link reproduces the view.
// Inputs are the parameter values; the last argument (a State) lists their names in the same order.
window.dash_clientside = Object.assign({}, window.dash_clientside, {
    dinoscope: {
        syncQuery: function () {
            const values = Array.from(arguments);
            const names = values.pop();
            const query = new URLSearchParams();
            names.forEach(function (name, i) {
                const value = values[i];
                if (value !== null && value !== undefined && value !== "") query.set(name, value);
            });
            window.history.replaceState(null, "", window.location.pathname + "?" + query.toString());
            return window.dash_clientside.no_update;
        }
    }
});
